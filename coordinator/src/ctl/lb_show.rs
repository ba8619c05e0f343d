//! `lbfleet lb show`: the topology at once, then each LB host against the desired map, then
//! the desired map itself as it streams in, so a map of any size starts printing at once.

use std::io::BufWriter;
use std::io::Write;

use super::client::Client;
use super::output;

/// Prints the cluster's topology, the comparison of its hosts (of `host` only, when given)
/// and its desired map; with `json`, one document once everything arrived.
pub async fn run(client: &Client, cluster: &str, host: Option<&str>, json: bool) -> anyhow::Result<()> {
    let topology = client.topology(cluster, host).await?;
    if !json {
        output::lb_show_topology(&topology);
    }
    let compared = client.lb_state(cluster, host).await?;
    let mut view = compared.desired.unwrap_or(topology);
    let mut bindings = client.bindings(cluster).await?;
    if json {
        let (_, all) = bindings.collect().await?;
        view.bindings = all;
        output::lb_show_json(&view, &compared.hosts);
        return Ok(());
    }
    output::lb_show_hosts(&compared.hosts);
    let marks = output::lb_show_marks(&compared.hosts);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    while let Some(entries) = bindings.next_chunk().await? {
        if first {
            let (total, version) = (bindings.total(), bindings.version().unwrap_or_default());
            out.flush()?;
            output::lb_show_map_heading(total, version, view.version);
            first = false;
        }
        output::lb_show_bindings(&mut out, &entries, &marks)?;
        out.flush()?;
    }
    drop(out);
    output::lb_show_extras(&compared.hosts);
    Ok(())
}
