//! The `lbfleet` client commands and their flags; doc comments are the help text. The binary
//! (`main.rs`) adds the commands that run locally (`coordinator run`, `pki`).

use std::path::PathBuf;

use clap::Args;
use clap::Subcommand;

/// Flags every client command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Coordinator gRPC addresses, comma-separated; any node will do.
    #[arg(long, env = "LBFLEET_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7400", global = true)]
    pub endpoints: Vec<String>,
    /// Directory with ca.pem and this process's certificate (see `lbfleet pki init`) [default: .lbfleet/tls].
    #[arg(long, env = "LBFLEET_TLS_DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Admin identity to use when the TLS directory holds several.
    #[arg(long, env = "LBFLEET_IDENTITY", global = true)]
    pub identity: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, env = "LBFLEET_JSON", global = true)]
    pub json: bool,
    /// Writes only: apply only if the state is still at version N (as a read or an earlier write
    /// reported it); a write against another version is refused with the current one.
    #[arg(long, value_name = "N", global = true)]
    pub if_version: Option<u64>,
    /// Seconds to wait for an answer; also the longest a --wait waits (bind, unbind, node drain
    /// and maint, and the drain before node remove).
    #[arg(long, env = "LBFLEET_TIMEOUT", default_value_t = 10.0, global = true)]
    pub timeout: f64,
}

/// The commands that talk to the coordinator group.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists the Raft members, or adds/removes one.
    Members {
        #[command(subcommand)]
        change: Option<MembersCommand>,
    },
    /// Creates or lists clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Registers Docker hosts whose agent serves a cluster's load balancer.
    #[command(subcommand)]
    Host(HostCommand),
    /// Creates shards (the LB backend becomes shard-NAME).
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Adds, drains and removes backend nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Binds an FQDN to a shard (moving it if it is bound elsewhere).
    Bind {
        fqdn: String,
        shard: String,
        /// The cluster; defaults to the shard's.
        #[arg(long)]
        cluster: Option<String>,
        /// Return once every LB host of the cluster has applied the change (or fail naming the laggards).
        #[arg(long)]
        wait: bool,
        /// With --wait (implied): also wait until every LB host served the FQDN through its HAProxy
        /// from this shard (the agents' end-to-end probe); fail naming the hosts that did not.
        #[arg(long)]
        verify: bool,
    },
    /// Removes the bindings of one or more FQDNs.
    Unbind {
        #[arg(required = true)]
        fqdns: Vec<String>,
        /// The cluster; needed only when the FQDN is bound in several.
        #[arg(long)]
        cluster: Option<String>,
        /// Return once every LB host of the cluster has applied the change (or fail naming the laggards).
        #[arg(long)]
        wait: bool,
    },
    /// Imports an existing fqdn-to-shard.map (`<fqdn> shard-<name>` per line) in batches.
    Import {
        file: PathBuf,
        #[arg(long)]
        cluster: String,
        /// Bindings per Raft log entry.
        #[arg(long, default_value_t = 10_000)]
        batch_size: usize,
        /// Also unbind what the cluster holds and the file does not name: the map becomes the file.
        #[arg(long)]
        prune: bool,
        /// Print what would be added, moved, removed and left alone, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Load-balancer views.
    #[command(subcommand)]
    Lb(LbCommand),
    /// Coordinator nodes, leader, term, commit and applied indexes.
    Status,
    /// Backs up the replicated state to a file (`coordinator restore` makes a new group of it).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Who changed what, and when: the replicated history, oldest first, read from the first
    /// endpoint that answers (every node keeps it); or, with --set-limit, how much it keeps.
    History(HistoryArgs),
}

/// `lbfleet history`
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only changes to this FQDN.
    #[arg(long)]
    pub fqdn: Option<String>,
    /// Only changes in this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only changes since this time: RFC 3339 (2026-11-28T10:00:00Z) or a duration ago (90s, 10m, 2h, 3d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Keep the last N changes from now on (the oldest go first; 0 keeps none). A write.
    #[arg(long, value_name = "N", conflicts_with_all = ["fqdn", "cluster", "since"])]
    pub set_limit: Option<u64>,
}

/// `lbfleet pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Creates a CA (or reuses the one in DIR) and a bundle DIR/<role>-<name>/ (ca.pem and that
    /// identity's certificate and key) for each identity not yet there; ca.key stays in DIR.
    Init(PkiIdentities),
    /// Issues a new key and certificate for each identity, in place in its bundle; running
    /// daemons use them from their next connection, without a restart.
    Renew(PkiIdentities),
}

/// The operator's directory and the identities a `pki` command is about.
#[derive(Debug, Args)]
pub struct PkiIdentities {
    /// The operator's directory: the CA and every bundle.
    #[arg(long)]
    pub dir: PathBuf,
    /// Coordinator node ids, e.g. `--coordinator 1 2 3`.
    #[arg(long, num_args = 1..)]
    pub coordinator: Vec<String>,
    /// Agent host ids.
    #[arg(long, num_args = 1..)]
    pub agent: Vec<String>,
    /// Operator names.
    #[arg(long, num_args = 1..)]
    pub admin: Vec<String>,
}

/// `lbfleet members add|remove`
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    Add {
        /// `ID=ADDR`
        member: String,
    },
    /// Removes a voting member.
    Remove { id: u64 },
}

/// `lbfleet cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Creates a cluster.
    Create {
        name: String,
        /// HAProxy container on the cluster's hosts (default hosting-haproxy).
        #[arg(long)]
        haproxy_container: Option<String>,
    },
    /// Lists clusters with their sizes.
    List,
    /// A cluster's hosts, shards and nodes (each node's server id and admin state).
    Show {
        /// Defaults to the only cluster, if there is one.
        name: Option<String>,
    },
    /// Deletes a cluster that has no hosts, shards or bindings left.
    Delete { name: String },
    /// Changes the HAProxy container of the cluster's hosts (hosts with their own keep theirs).
    Set {
        name: String,
        #[arg(long)]
        haproxy_container: String,
    },
}

/// `lbfleet host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Registers an LB host.
    Add {
        host: String,
        #[arg(long)]
        cluster: String,
        /// Overrides the cluster's HAProxy container name on this host.
        #[arg(long)]
        haproxy_container: Option<String>,
        /// How the host is reached (informational; default: its id).
        #[arg(long)]
        address: Option<String>,
    },
    /// Refuses a host's certificates from now on, or one certificate by serial, and closes the
    /// host's stream; recorded in the replicated state, so every coordinator refuses it.
    Revoke(RevocationArgs),
    /// Lifts a revocation made with `host revoke`.
    Unrevoke(RevocationArgs),
    /// Removes an LB host; refused while nodes name it. Its agent's stream is closed.
    Remove { host: String },
    /// Gives the host its own HAProxy container, or makes it use its cluster's again.
    Set {
        host: String,
        #[command(flatten)]
        container: HostContainer,
    },
}

/// The container a host's agent drives.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct HostContainer {
    /// This host's own HAProxy container.
    #[arg(long)]
    pub haproxy_container: Option<String>,
    /// Use the cluster's HAProxy container again.
    #[arg(long)]
    pub cluster_container: bool,
}

/// A host, or a certificate serial.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevocationArgs {
    /// Every certificate of this agent host.
    pub host: Option<String>,
    /// One certificate, by the serial `lbfleet pki` printed (hex, colons allowed).
    #[arg(long)]
    pub serial: Option<String>,
}

/// `lbfleet shard ...`
#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Creates a shard; its LB backend is shard-NAME.
    Create {
        name: String,
        #[arg(long)]
        cluster: String,
    },
    /// Deletes a shard without nodes; refused while FQDNs are bound to it, unless --move-to.
    Delete {
        name: String,
        /// Moves its FQDNs to this shard of the same cluster, in the same change.
        #[arg(long)]
        move_to: Option<String>,
    },
}

/// `lbfleet node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Adds a backend server to a shard.
    Add {
        name: String,
        #[arg(long)]
        shard: String,
        #[arg(long)]
        host: String,
        /// ADDR:PORT HAProxy connects to.
        #[arg(long)]
        address: String,
        /// The node's container name.
        #[arg(long)]
        container: Option<String>,
    },
    /// Removes a backend server, draining it first (--now skips the drain).
    ///
    /// Sets the node to drain (unless it is in drain or maint already), waits until every LB
    /// host holds it with no sessions, then removes it. When --timeout (seconds) passes first,
    /// the node is not removed and stays out of rotation.
    Remove {
        name: String,
        /// Remove at once, without draining: requests in flight on it are cut.
        #[arg(long)]
        now: bool,
    },
    /// Drains a node: it finishes the requests it has and takes no new ones.
    ///
    /// Every LB host of its cluster applies it through HAProxy's runtime API, without a reload.
    Drain {
        name: String,
        /// Return once every LB host holds it drained with no sessions left; fail after --timeout
        /// seconds naming the hosts that still hold sessions, did not answer or hold another state.
        #[arg(long)]
        wait: bool,
    },
    /// Puts a node in maintenance: no new requests and no health checks.
    Maint {
        name: String,
        /// Return once no LB host holds a session on it; fail after --timeout seconds naming those that do.
        #[arg(long)]
        wait: bool,
    },
    /// Puts a drained or maintained node back into rotation.
    Ready { name: String },
    /// Changes the address HAProxy connects to for a node.
    Set {
        name: String,
        /// ADDR:PORT.
        #[arg(long)]
        address: String,
    },
}

/// `lbfleet lb ...`
#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// The map each LB host should hold next to what its HAProxy holds, differences marked.
    Show {
        /// Defaults to the only cluster, if there is one.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        host: Option<String>,
    },
}

/// `lbfleet snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Writes a consistent snapshot of the replicated state, served by the leader, to FILE
    /// (atomically; checked on the way). --timeout bounds the first answer and each chunk.
    Save {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Checks a snapshot file (length, checksum, state) and prints what it holds; needs no coordinator.
    Verify { file: PathBuf },
}
