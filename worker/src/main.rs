//! `pushfleet`: the worker binary, a shell over [`pushfleet_worker::cli`].

fn main() -> std::process::ExitCode {
    pushfleet_worker::cli::main()
}
