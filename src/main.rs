fn main() {
    std::process::exit(ocimodel::cli::main_with_args(std::env::args().collect()));
}
