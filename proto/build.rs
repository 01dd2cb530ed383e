//! Compiles `lcserve/v1/*.proto` with `protox` (pure Rust, no system `protoc`) and generates the
//! tonic/prost code; also writes the encoded file descriptor set that servers register for
//! gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["lcserve/v1/kvstore.proto", "lcserve/v1/generation.proto", "lcserve/v1/worker.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lcserve");
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("lcserve_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
