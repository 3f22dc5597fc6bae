//! `ferrokv-failpoints`: the `ferrokv` member with failpoints compiled in, for the robustness
//! suite (docs/robustness.md). Built only with the `failpoints` feature; the failpoints are
//! armed through `ferrokv_node::failpoints`' HTTP endpoint or `FAILPOINTS`.

use std::process::ExitCode;

#[path = "../main.rs"]
mod member;

fn main() -> ExitCode {
    if let Err(message) = ferrokv_node::failpoints::start_from_env() {
        eprintln!("ferrokv-failpoints: {message}");
        return ExitCode::FAILURE;
    }
    member::main()
}
