fn main() {
    println!("cargo:rerun-if-changed=proto/peer.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/peer.proto"], &["proto"])
        .expect("compile proto/peer.proto (needs protoc: apt-get install protobuf-compiler)");
}
