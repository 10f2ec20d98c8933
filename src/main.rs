fn main() -> std::process::ExitCode {
    lineaged::cli::main()
}
