//! Compiles `proto/tetragon/*.proto` without protoc (protox), then generates
//! the prost types, the tonic service and client, and protojson (pbjson)
//! for them.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tetragon/capabilities.proto",
        "proto/tetragon/tetragon.proto",
        "proto/tetragon/events.proto",
        "proto/tetragon/sensors.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("descriptors.bin"), &bytes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".tetragon"])?;
    Ok(())
}
