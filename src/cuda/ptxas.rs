//! ptxas's resource report of every kernel (registers, spills, shared memory),
//! captured by build.rs. A spilling kernel fails tests/ptxas_report.rs.

/// What `nvcc -Xptxas -v` printed while building the embedded fatbin.
pub const PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas.txt"));

/// Resources of one kernel for one architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel's (extern "C") name.
    pub name: String,
    /// Target, e.g. `sm_80` or `sm_90a`.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Local-memory stack frame per thread, bytes.
    pub stack_frame: u32,
    /// Bytes spilled to local memory (stores).
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
    /// Static shared memory, bytes (dynamic shared memory is not in the report).
    pub shared: u32,
}

/// Parses [`PTXAS_REPORT`].
pub fn kernel_resources() -> Vec<KernelResources> {
    parse(PTXAS_REPORT)
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let end = line.find(unit)?;
    line[..end].split(|c: char| !c.is_ascii_digit()).rev().find(|s| !s.is_empty())?.parse().ok()
}

fn parse(report: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelResources { name, arch, ..Default::default() });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ptxas_lines() {
        let r = super::parse(
            "ptxas info    : Compiling entry function 'k1' for 'sm_80'\n\
             ptxas info    : Function properties for k1\n    \
             8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
             ptxas info    : Used 255 registers, used 1 barriers, 1408 bytes smem, 384 bytes cmem[0]\n",
        );
        assert_eq!(
            r,
            vec![super::KernelResources {
                name: "k1".into(),
                arch: "sm_80".into(),
                registers: 255,
                stack_frame: 8,
                spill_stores: 4,
                spill_loads: 12,
                shared: 1408
            }]
        );
    }
}
