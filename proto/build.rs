//! Generates the gRPC code from `proto/` with `protox`, so no `protoc` needs
//! to be installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flotilla/v1/worker.proto",
        "proto/flotilla/v1/master_link.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
