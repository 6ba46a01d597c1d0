//! `milestones`: runs the Sales Milestones services and is their
//! command-line client. All the work is in the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    milestones::cli::main()
}
