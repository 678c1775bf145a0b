//! The `pushfleet` program as this package's own binary target, `pushfleet-e2e`: Cargo builds a
//! package's binaries, fresh, before running its integration tests, so the end-to-end tests
//! always run the worker of the sources they were compiled with.

fn main() -> std::process::ExitCode {
    pushfleet_worker::cli::main()
}
