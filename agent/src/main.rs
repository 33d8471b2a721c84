//! `iomt-agent`: the iomt-edge command-line entry point.

fn main() {
    println!("iomt-agent {}", env!("CARGO_PKG_VERSION"));
}
