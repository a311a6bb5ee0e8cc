fn main() {
    std::process::exit(pronto_offsite::cli::main());
}
