//! The one check a policy cannot pass on paper: whether the running kernel
//! can enforce what it asks. A policy that asks more than the kernel can do
//! is refused at load with the reason, never quietly weakened.
use std::path::PathBuf;

use super::{HookFamily, Policy, PolicyError};
use crate::load::probe::Plan;

const EPERM: u32 = 1;

/// Refuses the first policy that this kernel cannot enforce as written.
pub fn fits_kernel(policies: &[(PathBuf, Policy)], plan: &Plan) -> Result<(), PolicyError> {
    for (file, p) in policies {
        for h in &p.hooks {
            for (j, s) in h.selectors.iter().enumerate() {
                if let (HookFamily::Exec, Some(_), Some(why)) =
                    (h.family, s.actions.errno, plan.lsm_missing)
                {
                    return Err(PolicyError {
                        file: file.clone(),
                        field: format!("{}.selectors[{j}].matchActions", h.field),
                        reason: format!("Override on exec needs BPF-LSM: {why}; use Sigkill"),
                    });
                }
                if let (true, Some(why)) = (s.actions.ima_hash, plan.ima_missing) {
                    return Err(PolicyError {
                        file: file.clone(),
                        field: format!("{}.selectors[{j}].matchActions", h.field),
                        reason: format!("imaHash needs a sleepable BPF-LSM program calling bpf_ima_file_hash: {why}"),
                    });
                }
                let errno = s.actions.errno.filter(|e| *e != EPERM);
                if let (HookFamily::Connect, Some(e), Some(why)) =
                    (h.family, errno, plan.connect_errno_missing)
                {
                    return Err(PolicyError {
                        file: file.clone(),
                        field: format!("{}.selectors[{j}].matchActions", h.field),
                        reason: format!(
                            "Override with argError -{e} cannot be enforced: {why}; only -1 (EPERM) can"
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
