use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    wgan_train::cli::main()
}

/// Tensor buffers of up to tens of MiB are freed and allocated again every step. By default
/// glibc's malloc serves them with mmap and munmap (and trims its heap above 128 KiB), so every
/// step faults their pages in again; keeping them in the heap made a training iteration on Flex
/// 18% faster (0.83 vs 1.01 s at 32x32x3, sn; scripts/bench.py, issue 7). Each
/// process keeps its peak heap instead: still a third of PyTorch's RSS.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        // 32 MiB: glibc's largest accepted mmap threshold on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
