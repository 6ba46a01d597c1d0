//! `milestones`: runs the Sales Milestones services and is their
//! command-line client. All the work is in the library.

fn main() -> std::process::ExitCode {
    milestones::cli::main()
}
