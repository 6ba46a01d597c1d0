//! `milestones`: runs the Sales Milestones services and is their
//! command-line client. All the work is in the library.

/// mimalloc, not the system allocator: ingestion plans and encodes many
/// small strings per activity, and glibc's malloc and free took about 40 %
/// of the server's time in a bulk import (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    milestones::cli::main()
}
