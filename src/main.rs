fn main() -> std::process::ExitCode {
    ocimodel::cli::main_with_args(std::env::args().collect())
}
