fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tunefleet.proto");
    tonic_prost_build::configure().compile_protos(&["proto/tunefleet.proto"], &["proto"])?;
    Ok(())
}
