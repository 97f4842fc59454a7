//! Compiles `proto/` into `OUT_DIR` (added with the gRPC service).

fn main() {
    println!("cargo:rerun-if-changed=proto");
}
