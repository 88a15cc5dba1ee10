//! Writes the man pages and shell completions of the command line into a directory, from the
//! same clap definitions the binary parses with: `man/bootagent.1`, one page per subcommand
//! (`man/bootagent-lifecycle-complete.1`), and `completions/{bootagent.bash,_bootagent,
//! bootagent.fish}`. A cargo example, so clap_mangen and clap_complete stay out of the binary.
//!
//!     cargo run --example generate-docs -- OUT_DIR

use std::path::Path;

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .expect("usage: generate-docs OUT_DIR");
    let out = Path::new(&out);
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let mut command = bootagent::cli::Cli::command();
    command.build();
    write_pages(&command, &man)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "bootagent.bash"),
        (clap_complete::Shell::Zsh, "_bootagent"),
        (clap_complete::Shell::Fish, "bootagent.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command, "bootagent", &mut text);
        std::fs::write(completions.join(file), text)?;
    }
    Ok(())
}

/// One page for `command`, then one for each of its subcommands, all the way down. After
/// `build`, a subcommand's display name is its path (`bootagent-lifecycle-complete`), which names
/// its page.
fn write_pages(command: &clap::Command, dir: &Path) -> std::io::Result<()> {
    let page = clap_mangen::Man::new(command.clone());
    let mut text = Vec::new();
    page.render(&mut text)?;
    std::fs::write(dir.join(page.get_filename()), text)?;
    for sub in command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
    {
        write_pages(sub, dir)?;
    }
    Ok(())
}
