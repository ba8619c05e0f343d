//! A strict parser of the OpenMetrics text exposition the daemons serve at `/metrics`: every
//! family declared by `# TYPE` before its samples and not split, samples named after their
//! family with the suffixes its type allows, labels quoted and escaped, no sample twice,
//! histogram buckets cumulative up to `+Inf` = `_count`, and `# EOF` last.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// Why an exposition was refused; `line` counts from 1 (0: the text as a whole).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// One sample: its full name (with suffix), labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# TYPE`, `# HELP`, `# UNIT` and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    /// The family called `name` (without sample suffixes).
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples().find(|s| s.name == name && s.labels == wanted).map(|s| s.value)
    }

    /// Every sample of every family.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.iter().flat_map(|f| f.samples.iter())
    }
}

/// The sample suffixes a family of `kind` may use.
fn suffixes(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "unknown" | "stateset" => &[""],
        "info" => &["_info"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        _ => return None,
    })
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_name(name) && !name.contains(':')
}

/// Parses `text` strictly; see the module's description for what is checked.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let fail = |line: usize, reason: String| ParseError { line, reason };
    let body = text.strip_suffix('\n').ok_or_else(|| fail(0, "the exposition does not end with a newline".into()))?;
    let lines: Vec<&str> = body.split('\n').collect();
    if lines.last() != Some(&"# EOF") {
        return Err(fail(lines.len(), "the last line is not `# EOF`".into()));
    }
    let mut families: Vec<Family> = Vec::new();
    let mut seen_families = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut seen_samples = BTreeSet::new();
    for (index, line) in lines[..lines.len() - 1].iter().enumerate() {
        let number = index + 1;
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            if !is_name(name) {
                return Err(fail(number, format!("invalid metric name {name:?}")));
            }
            let open = families.last_mut().filter(|f| f.name == name);
            let family = match (keyword, open) {
                ("TYPE", _) => {
                    let kind = rest.ok_or_else(|| fail(number, "TYPE without a type".into()))?;
                    if suffixes(kind).is_none() {
                        return Err(fail(number, format!("unknown type {kind:?}")));
                    }
                    if !typed.insert(name.to_string()) {
                        return Err(fail(number, format!("family {name} typed twice")));
                    }
                    match families.last_mut().filter(|f| f.name == name && f.samples.is_empty()) {
                        // Opened by its HELP.
                        Some(family) => family.kind = kind.into(),
                        None if seen_families.insert(name.to_string()) => families.push(Family {
                            name: name.into(),
                            kind: kind.into(),
                            help: None,
                            unit: None,
                            samples: Vec::new(),
                        }),
                        None => return Err(fail(number, format!("family {name} is split"))),
                    }
                    continue;
                }
                // HELP and UNIT may come before TYPE; a family is opened by the first of them.
                (_, Some(family)) => family,
                (_, None) => {
                    if !seen_families.insert(name.to_string()) {
                        return Err(fail(number, format!("family {name} is split")));
                    }
                    families.push(Family {
                        name: name.into(),
                        kind: "unknown".into(),
                        help: None,
                        unit: None,
                        samples: Vec::new(),
                    });
                    families.last_mut().expect("just pushed")
                }
            };
            let value = rest.unwrap_or("").to_string();
            let slot = match keyword {
                "HELP" => &mut family.help,
                "UNIT" => &mut family.unit,
                other => return Err(fail(number, format!("unknown metadata {other:?}"))),
            };
            if slot.replace(value).is_some() {
                return Err(fail(number, format!("{keyword} of {name} given twice")));
            }
            if keyword == "UNIT" && !name.ends_with(&format!("_{}", family.unit.as_deref().unwrap_or(""))) {
                return Err(fail(number, format!("{name} does not end with its unit")));
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(fail(number, format!("stray comment {line:?}")));
        }
        let sample = parse_sample(line).map_err(|reason| fail(number, reason))?;
        let family =
            families.last_mut().ok_or_else(|| fail(number, format!("sample {} before any family", sample.name)))?;
        let allowed = suffixes(&family.kind).expect("checked at TYPE");
        let suffix = sample.name.strip_prefix(family.name.as_str()).filter(|s| allowed.contains(s));
        if suffix.is_none() {
            return Err(fail(
                number,
                format!("sample {} does not belong to {} {}", sample.name, family.kind, family.name),
            ));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !seen_samples.insert(key) {
            return Err(fail(number, format!("sample {} {:?} given twice", sample.name, sample.labels)));
        }
        family.samples.push(sample);
    }
    for family in &families {
        if family.kind == "histogram" {
            check_histogram(family).map_err(|reason| fail(0, reason))?;
        }
    }
    Ok(Exposition { families })
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    if !is_name(name) {
        return Err(format!("invalid sample name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").ok_or_else(|| format!("malformed labels in {line:?}"))?;
            let label = &rest[..eq];
            if !is_label_name(label) {
                return Err(format!("invalid label name {label:?}"));
            }
            let (value, after) =
                unescape(&rest[eq + 2..]).ok_or_else(|| format!("unterminated label value in {line:?}"))?;
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} given twice in {line:?}"));
            }
            rest = after.strip_prefix(',').unwrap_or(after);
            if !after.starts_with([',', '}']) {
                return Err(format!("malformed labels in {line:?}"));
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or_else(|| format!("no space before the value in {line:?}"))?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or("")).ok_or_else(|| format!("invalid value in {line:?}"))?;
    if let Some(timestamp) = parts.next() {
        timestamp.parse::<f64>().map_err(|_| format!("invalid timestamp in {line:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("trailing text in {line:?}"));
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust accepts "inf" and "nan", which the format does not.
        _ if text.chars().any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => None,
        _ => text.parse().ok(),
    }
}

/// The value up to the closing quote, with `\\`, `\"` and `\n` unescaped, and what follows it.
fn unescape(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'n' => value.push('\n'),
                _ => return None,
            },
            c => value.push(c),
        }
    }
    None
}

/// Buckets per label set: `le` present, cumulative, ending at `+Inf` equal to `_count`.
fn check_histogram(family: &Family) -> Result<(), String> {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        if sample.name.ends_with("_bucket") {
            let le = labels.remove("le").ok_or_else(|| format!("{} bucket without le", family.name))?;
            let bound = parse_value(&le).ok_or_else(|| format!("{}: invalid le {le:?}", family.name))?;
            series.entry(labels).or_default().push((bound, sample.value));
        } else if sample.name.ends_with("_count") {
            counts.insert(labels, sample.value);
        }
    }
    for (labels, buckets) in &series {
        let ordered = buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        if !ordered {
            return Err(format!("{} {labels:?}: buckets not ascending and cumulative", family.name));
        }
        let last = buckets.last().expect("a series has a bucket");
        if last.0 != f64::INFINITY {
            return Err(format!("{} {labels:?}: no +Inf bucket", family.name));
        }
        if counts.get(labels) != Some(&last.1) {
            return Err(format!(
                "{} {labels:?}: +Inf bucket {} is not the count {:?}",
                family.name,
                last.1,
                counts.get(labels)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total{kind=\"a\\\"b\"} 3\n\
        # TYPE up gauge\nup 1\n# TYPE lat_seconds histogram\n# UNIT lat_seconds seconds\n\
        lat_seconds_sum{k=\"x\"} 0.5\nlat_seconds_count{k=\"x\"} 2\nlat_seconds_bucket{k=\"x\",le=\"0.1\"} 1\n\
        lat_seconds_bucket{k=\"x\",le=\"+Inf\"} 2\n# EOF\n";

    #[test]
    fn a_good_exposition_parses() {
        let parsed = parse(GOOD).unwrap();
        assert_eq!(parsed.families.len(), 3);
        assert_eq!(parsed.value("jobs_total", &[("kind", "a\"b")]), Some(3.0));
        assert_eq!(parsed.value("up", &[]), Some(1.0));
        assert_eq!(parsed.value("lat_seconds_bucket", &[("k", "x"), ("le", "+Inf")]), Some(2.0));
        assert_eq!(parsed.family("jobs").unwrap().help.as_deref(), Some("Jobs done."));
    }

    #[test]
    fn broken_expositions_are_refused() {
        let broken = [
            ("no EOF", GOOD.replace("# EOF\n", "")),
            ("text after EOF", format!("{GOOD}up 2\n")),
            ("counter without _total", GOOD.replace("jobs_total", "jobs")),
            ("split family", GOOD.replace("# EOF", "jobs_total{kind=\"c\"} 1\n# EOF")),
            ("duplicate sample", GOOD.replace("up 1\n", "up 1\nup 2\n")),
            ("bad value", GOOD.replace("up 1", "up one")),
            ("bad escape", GOOD.replace("a\\\"b", "a\\qb")),
            ("unquoted label", GOOD.replace("kind=\"a\\\"b\"", "kind=a")),
            ("no +Inf", GOOD.replace("le=\"+Inf\"", "le=\"1\"")),
            ("count differs", GOOD.replace("lat_seconds_count{k=\"x\"} 2", "lat_seconds_count{k=\"x\"} 5")),
            ("sample before TYPE", format!("x 1\n{GOOD}")),
            ("unit not in name", GOOD.replace("# UNIT lat_seconds seconds", "# UNIT lat_seconds bytes")),
        ];
        for (what, text) in broken {
            assert!(parse(&text).is_err(), "{what} was accepted:\n{text}");
        }
    }
}
