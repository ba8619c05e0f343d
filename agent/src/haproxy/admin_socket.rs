//! HAProxy's admin socket protocol ("runtime API"): building pipelined command batches,
//! splitting the answers, and the two transports (the shared socket, `docker exec socat`).
//!
//! Framing of HAProxy 3.0 in interactive mode (`prompt`), checked against a container:
//! - the answer to every command is its output followed by `"\n> "`; the output is empty
//!   or ends with `\n` (`add map` OK: `"\n> "`; `set map` on a missing key:
//!   `"entry not found.\n\n> "`); the answer to `prompt` itself is `"\n> "`;
//! - a payload command (`add map @1 m <<`, lines, empty line) first echoes one
//!   continuation prompt `"+ "` per line read (the command line and each payload line),
//!   then its answer;
//! - a command longer than `tune.bufsize` (16 KiB by default, payload included) is
//!   refused with `The command is too big for the buffer size...` and the session closes;
//! - commands are answered in order, so a whole batch can be written before reading.

use std::ops::Range;
use std::path::Path;
use std::pin::Pin;

use bollard::container::LogOutput;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

use super::HaproxyError;
use crate::docker::DockerHost;
use crate::docker::ExecOutputStream;

/// Bytes read from the socket per `read` call at least.
const READ_CHUNK: usize = 64 * 1024;
/// Bound on sending `quit` when a session ends.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Refuses words that could split or extend a runtime API command: whitespace and control
/// characters end a word or a line, `;` chains commands, `#` starts a comment, quotes and
/// `\` change how words are split, and `<<` opens a payload.
pub(crate) fn check_word(what: &'static str, word: &str) -> Result<(), HaproxyError> {
    let bad_byte = |b: u8| b <= b' ' || b == 0x7f || matches!(b, b';' | b'#' | b'\\' | b'\'' | b'"');
    let bad = word.is_empty()
        || word.bytes().any(bad_byte)
        || (!word.is_ascii() && word.chars().any(|c| c.is_whitespace() || c.is_control()))
        || word.contains("<<");
    if bad {
        return Err(HaproxyError::UnsafeWord { what, value: word.to_owned() });
    }
    Ok(())
}

/// Commands written to HAProxy in one go, with what each answer looks like.
#[derive(Debug, Default)]
pub(crate) struct CommandBatch {
    bytes: Vec<u8>,
    /// Per command: the continuation prompts (`"+ "`) HAProxy sends before its answer.
    continuations: Vec<usize>,
    /// Start of the command being built, for `current_len`.
    current_start: usize,
}

impl CommandBatch {
    /// An empty batch with room for about `bytes` of commands.
    pub(crate) fn with_capacity(bytes: usize, commands: usize) -> CommandBatch {
        CommandBatch { bytes: Vec::with_capacity(bytes), continuations: Vec::with_capacity(commands), current_start: 0 }
    }

    /// Number of commands in the batch.
    pub(crate) fn len(&self) -> usize {
        self.continuations.len()
    }

    /// Whether the batch holds no command.
    pub(crate) fn is_empty(&self) -> bool {
        self.continuations.is_empty()
    }

    /// Appends a one-line command made of `words` (each checked with `check_word`).
    pub(crate) fn push(&mut self, words: &[(&'static str, &str)]) -> Result<(), HaproxyError> {
        self.current_start = self.bytes.len();
        self.push_words(words)?;
        self.bytes.push(b'\n');
        self.continuations.push(0);
        Ok(())
    }

    /// Starts a payload command `words <<`; add lines with `payload_line`, end with `end_payload`.
    pub(crate) fn begin_payload(&mut self, words: &[(&'static str, &str)]) -> Result<(), HaproxyError> {
        self.current_start = self.bytes.len();
        self.push_words(words)?;
        self.bytes.extend_from_slice(b" <<\n");
        self.continuations.push(1);
        Ok(())
    }

    /// Adds a `key value` line to the open payload command.
    pub(crate) fn payload_line(&mut self, key: &str, value: &str) -> Result<(), HaproxyError> {
        check_word("map key", key)?;
        check_word("map value", value)?;
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.push(b'\n');
        if let Some(last) = self.continuations.last_mut() {
            *last += 1;
        }
        Ok(())
    }

    /// Closes the open payload command with its empty line.
    pub(crate) fn end_payload(&mut self) {
        self.bytes.push(b'\n');
    }

    /// Bytes of the command being built, payload included.
    pub(crate) fn current_len(&self) -> usize {
        self.bytes.len() - self.current_start
    }

    fn push_words(&mut self, words: &[(&'static str, &str)]) -> Result<(), HaproxyError> {
        for (what, word) in words {
            check_word(what, word)?;
        }
        for (i, (_, word)) in words.iter().enumerate() {
            if i > 0 {
                self.bytes.push(b' ');
            }
            self.bytes.extend_from_slice(word.as_bytes());
        }
        Ok(())
    }
}

/// The answers to one batch, in command order.
pub(crate) struct CommandAnswers<'a> {
    buf: &'a [u8],
    spans: Vec<Range<usize>>,
}

impl<'a> CommandAnswers<'a> {
    /// The output of command `i` (without the prompt); empty means success for most commands.
    pub(crate) fn get(&self, i: usize) -> &'a [u8] {
        self.spans.get(i).map_or(&[][..], |span| &self.buf[span.clone()])
    }

    /// The output of command `i` as trimmed text, for messages.
    pub(crate) fn text(&self, i: usize) -> String {
        String::from_utf8_lossy(self.get(i)).trim().to_owned()
    }
}

/// Splits answers off the front of the session's output; keeps state between reads.
#[derive(Debug, Default)]
struct Framer {
    /// Start of the answer being parsed.
    pos: usize,
    /// Where the search for the next prompt resumes.
    scan: usize,
    /// Continuation prompts still expected before the current answer.
    continuations_left: usize,
}

impl Framer {
    /// Parses one answer if `buf` holds all of it; returns its span.
    fn next_answer(&mut self, buf: &[u8]) -> Option<Range<usize>> {
        while self.continuations_left > 0 {
            match buf.get(self.pos..self.pos + 2) {
                Some(b"+ ") => {
                    self.pos += 2;
                    self.continuations_left -= 1;
                }
                // A partial "+ " needs more bytes; anything else means HAProxy stopped reading the payload.
                None if buf.get(self.pos) == Some(&b'+') || buf.len() <= self.pos => return None,
                _ => self.continuations_left = 0,
            }
        }
        let from = self.scan.max(self.pos);
        let mut i = from;
        while let Some(offset) = buf[i..].iter().position(|&b| b == b'\n') {
            let newline = i + offset;
            match buf.get(newline + 1..newline + 3) {
                Some(b"> ") => {
                    let span = self.pos..newline;
                    self.pos = newline + 3;
                    self.scan = self.pos;
                    return Some(span);
                }
                Some(_) => i = newline + 1,
                None => {
                    self.scan = newline;
                    return None;
                }
            }
        }
        self.scan = buf.len();
        None
    }
}

/// Where the session's output comes from.
enum Reader {
    Socket(OwnedReadHalf),
    Exec {
        output: ExecOutputStream,
        stderr: Vec<u8>,
        /// Where the exec runs, to name it when its output stream fails.
        docker: DockerHost,
        container: String,
    },
}

impl Reader {
    /// Appends more output to `buf`; `Ok(false)` at end of stream.
    async fn read_more(&mut self, buf: &mut Vec<u8>) -> Result<bool, HaproxyError> {
        match self {
            Reader::Socket(stream) => {
                buf.reserve(READ_CHUNK);
                let n = stream.read_buf(buf).await.map_err(|source| HaproxyError::SocketIo { source })?;
                Ok(n > 0)
            }
            Reader::Exec { output, stderr, docker, container } => loop {
                match output.next().await {
                    None => return Ok(false),
                    Some(Ok(LogOutput::StdErr { message })) => stderr.extend_from_slice(&message),
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        buf.extend_from_slice(&message);
                        return Ok(true);
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(source)) => return Err(docker.api_error("exec output", container, source).into()),
                }
            },
        }
    }

    fn stderr(&self) -> &[u8] {
        match self {
            Reader::Socket(_) => &[],
            Reader::Exec { stderr, .. } => stderr,
        }
    }
}

/// One admin session in interactive mode; batches are pipelined over it round by round.
pub(crate) struct AdminSession {
    reader: Reader,
    writer: Pin<Box<dyn AsyncWrite + Send>>,
    buf: Vec<u8>,
    framer: Framer,
    /// `prompt` still has to be sent (with the first batch, to save a round trip).
    prompt_pending: bool,
}

impl AdminSession {
    /// Connects to the admin socket shared on the host.
    pub(crate) async fn connect(path: &Path) -> Result<AdminSession, HaproxyError> {
        let stream =
            UnixStream::connect(path).await.map_err(|source| HaproxyError::Socket { path: path.to_owned(), source })?;
        let (read, write) = stream.into_split();
        Ok(AdminSession::new(Reader::Socket(read), Box::pin(write)))
    }

    /// Runs `socat` in the container to reach its admin socket at `socket` (the fallback path).
    pub(crate) async fn exec(docker: &DockerHost, container: &str, socket: &str) -> Result<AdminSession, HaproxyError> {
        let address = format!("UNIX-CONNECT:{socket}");
        // -t: after stdin closes, wait for HAProxy's last answers instead of socat's 0.5 s.
        let cmd = ["socat", "-t", "30", "stdio", address.as_str()];
        let exec = docker.exec_attached(container, &cmd, true).await?;
        let reader = Reader::Exec {
            output: exec.output,
            stderr: Vec::new(),
            docker: docker.clone(),
            container: container.to_owned(),
        };
        Ok(AdminSession::new(reader, exec.input))
    }

    fn new(reader: Reader, writer: Pin<Box<dyn AsyncWrite + Send>>) -> AdminSession {
        AdminSession { reader, writer, buf: Vec::new(), framer: Framer::default(), prompt_pending: true }
    }

    /// Ends the session. Over exec, `quit` lets socat exit at once instead of after its `-t` wait.
    pub(crate) async fn close(mut self) {
        if let Reader::Exec { .. } = self.reader {
            let quit = async {
                self.writer.write_all(b"quit\n").await?;
                self.writer.shutdown().await
            };
            // Best effort: the answers are in; a failure here changes nothing.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, quit).await;
        }
    }

    /// Writes the whole batch while reading, and returns once every command is answered.
    pub(crate) async fn round(&mut self, batch: &CommandBatch) -> Result<CommandAnswers<'_>, HaproxyError> {
        // Answers of earlier rounds are no longer borrowed.
        self.buf.drain(..self.framer.pos);
        self.framer = Framer::default();
        let prompt = std::mem::take(&mut self.prompt_pending);
        let skip = usize::from(prompt);
        let AdminSession { reader, writer, buf, framer, .. } = self;

        let write = async {
            if prompt {
                writer.write_all(b"prompt\n").await?;
            }
            writer.write_all(&batch.bytes).await?;
            writer.flush().await
        };
        let read = async {
            let expected = batch.len() + skip;
            let mut spans = Vec::with_capacity(batch.len());
            let mut answered = 0;
            framer.continuations_left = if prompt { 0 } else { batch.continuations.first().copied().unwrap_or(0) };
            while answered < expected {
                match framer.next_answer(buf) {
                    Some(span) => {
                        if answered >= skip {
                            spans.push(span);
                        }
                        answered += 1;
                        framer.continuations_left = batch.continuations.get(answered - skip).copied().unwrap_or(0);
                    }
                    None => {
                        if !reader.read_more(buf).await? {
                            let mut message = String::from_utf8_lossy(&buf[framer.pos..]).trim().to_owned();
                            let stderr = String::from_utf8_lossy(reader.stderr()).trim().to_owned();
                            if !stderr.is_empty() {
                                message = format!("{message} {stderr}").trim().to_owned();
                            }
                            return Err(HaproxyError::SessionClosed {
                                answered: answered.saturating_sub(skip),
                                expected: batch.len(),
                                message,
                            });
                        }
                    }
                }
            }
            Ok(spans)
        };
        let (written, spans) = tokio::join!(write, read);
        // When HAProxy closed early the read side explains why; a write error alone cannot happen then.
        let spans = spans?;
        if let Err(source) = written {
            return Err(HaproxyError::SocketIo { source });
        }
        Ok(CommandAnswers { buf: &self.buf, spans })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(output: &[u8], continuations: &[usize]) -> Vec<String> {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for &c in continuations {
            framer.continuations_left = c;
            let span = framer.next_answer(output).expect("complete answer");
            out.push(String::from_utf8_lossy(&output[span]).into_owned());
        }
        out
    }

    #[test]
    fn splits_answers_as_haproxy_3_0_frames_them() {
        // Captured from HAProxy 3.0.11: prompt, add, set (missing), del (missing), show map.
        let output = b"\n> \n> entry not found.\n\n> Key not found.\n\n> 0x1 a.com shard-1\n0x2 a.com shard-2\n\n> ";
        let answers = split(output, &[0, 0, 0, 0, 0]);
        assert_eq!(
            answers,
            ["", "", "entry not found.\n", "Key not found.\n", "0x1 a.com shard-1\n0x2 a.com shard-2\n"]
        );
    }

    #[test]
    fn skips_continuation_prompts_of_payload_commands() {
        let output = b"\n> + + + + \n> 0x1 k shard-x\n\n> ";
        assert_eq!(split(output, &[0, 4, 0]), ["", "", "0x1 k shard-x\n"]);
    }

    #[test]
    fn waits_for_more_bytes_on_a_partial_answer() {
        let mut framer = Framer::default();
        let full = b"entry not found.\n\n> ";
        for cut in 0..full.len() {
            let mut f = Framer::default();
            assert_eq!(f.next_answer(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(framer.next_answer(full), Some(0..17));
        let mut framer = Framer { continuations_left: 2, ..Framer::default() };
        assert_eq!(framer.next_answer(b"+ +"), None);
        assert_eq!(framer.next_answer(b"+ + \n> "), Some(4..4));
    }

    #[test]
    fn a_refused_payload_ends_the_continuations() {
        let mut framer = Framer { continuations_left: 10, ..Framer::default() };
        let output = b"+ + The command is too big.\n\n> ";
        let span = framer.next_answer(output).expect("answer");
        assert_eq!(&output[span], b"The command is too big.\n");
    }

    #[test]
    fn refuses_words_that_could_inject_commands() {
        for bad in
            ["", "a b", "a\tb", "a\nb", "a;show", "a#b", "a\\b", "a'b", "a\"b", "<<", "x<<", "a\u{7f}", "a\u{2028}b"]
        {
            assert!(check_word("map key", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["example.com", "xn--bcher-kva.example", "shard-web_1.2", "/var/lib/haproxy/maps/x.map", "@12"] {
            check_word("map key", good).expect(good);
        }
    }

    #[test]
    fn batches_pipeline_commands_and_payloads() {
        let mut batch = CommandBatch::default();
        batch.push(&[("verb", "show"), ("verb", "map"), ("map", "/m")]).expect("valid");
        batch.begin_payload(&[("verb", "add"), ("verb", "map"), ("version", "@1"), ("map", "/m")]).expect("valid");
        batch.payload_line("a.com", "shard-1").expect("valid");
        batch.payload_line("b.com", "shard-2").expect("valid");
        batch.end_payload();
        assert_eq!(batch.bytes, b"show map /m\nadd map @1 /m <<\na.com shard-1\nb.com shard-2\n\n");
        assert_eq!(batch.continuations, [0, 3]);
        assert!(batch.push(&[("map key", "x;y")]).is_err());
    }
}
