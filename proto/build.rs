fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tunefleet.proto");
    // The descriptor set lets the coordinator serve gRPC reflection for these services.
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tunefleet_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptor_path)
        .compile_protos(&["proto/tunefleet.proto"], &["proto"])?;
    Ok(())
}
