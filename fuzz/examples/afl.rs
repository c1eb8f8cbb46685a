//! AFL++ entry point: `afl TARGET` runs one target under `afl-fuzz`
//! (docs/fuzzing.md); `afl dict TARGET` prints its tokens as an AFL dictionary.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let names = || {
        balp_fuzz::TARGETS
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match args.get(1).map(String::as_str) {
        Some("dict") => {
            let Some(t) = args.get(2).and_then(|n| balp_fuzz::target(n)) else {
                eprintln!("usage: balp-fuzz-afl dict TARGET (one of {})", names());
                std::process::exit(2);
            };
            for (i, word) in t.dict.iter().enumerate() {
                let escaped: String = word
                    .bytes()
                    .map(|b| match b {
                        b'"' | b'\\' => format!("\\{}", char::from(b)),
                        0x20..=0x7e => char::from(b).to_string(),
                        _ => format!("\\x{b:02x}"),
                    })
                    .collect();
                println!("w{i}=\"{escaped}\"");
            }
        }
        Some(name) => {
            let Some(t) = balp_fuzz::target(name) else {
                eprintln!("unknown target {name:?} (one of {})", names());
                std::process::exit(2);
            };
            afl::fuzz!(|data: &[u8]| {
                (t.run)(data);
            });
        }
        None => {
            eprintln!("usage: afl TARGET (one of {})", names());
            std::process::exit(2);
        }
    }
}
