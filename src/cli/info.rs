//! `l2d info`: what libtorch and the machine offer.

use anyhow::Result;

/// Flags of `l2d info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the libtorch version, CUDA and cuDNN availability, devices and CPU threads.
pub fn run(args: Args) -> Result<()> {
    let info = crate::runtime::info();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("l2d        {}", info.l2d_version);
    println!("libtorch   {}", info.libtorch_version);
    println!("cpu        {} threads ({} logical CPUs), MKL {}", info.cpu_threads, info.cpu_count, yes_no(info.mkl));
    match &info.cuda_runtime_version {
        Some(v) => println!("cuda       available (runtime {v})"),
        None => println!("cuda       not available"),
    }
    match info.cudnn_version {
        Some(v) => println!("cudnn      available ({v})"),
        None => println!("cudnn      not available"),
    }
    for d in &info.devices {
        println!("cuda:{}     {} ({:.1} GiB)", d.index, d.name, d.total_memory_bytes as f64 / (1u64 << 30) as f64);
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
