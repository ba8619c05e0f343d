//! Compiles `proto/*.proto` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/lbfleet.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // For gRPC reflection: clients such as grpcurl read the API from the server itself.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("lbfleet_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        // The CLI prints replies as JSON under their protobuf field names.
        .type_attribute(".lbfleet.v1", "#[derive(serde::Serialize)]")
        // Oneof variants then read as their protobuf field names too (`create_cluster`, not `CreateCluster`).
        .enum_attribute(".lbfleet.v1", "#[serde(rename_all = \"snake_case\")]")
        // Digests are 64-bit hashes: as JSON numbers, readers that parse doubles (jq, JavaScript) would round them.
        .field_attribute(".lbfleet.v1.Hello.map_digest", DIGEST_AS_HEX)
        .field_attribute(".lbfleet.v1.AgentReport.map_digest", DIGEST_AS_HEX)
        .field_attribute(".lbfleet.v1.ServerSpec.admin", ADMIN_AS_WORD)
        .field_attribute(".lbfleet.v1.SetNodeState.state", ADMIN_AS_WORD)
        .field_attribute(".lbfleet.v1.NodeSessionsReply.desired", ADMIN_AS_WORD)
        .field_attribute(".lbfleet.v1.NodeView.admin", ADMIN_AS_WORD)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Admin states as "ready", "drain" or "maint" in the CLI's JSON.
const ADMIN_AS_WORD: &str = "#[serde(serialize_with = \"crate::admin_state::serialize_admin\")]";
const DIGEST_AS_HEX: &str = "#[serde(serialize_with = \"crate::digest::serialize_hex\")]";
