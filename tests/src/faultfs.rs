//! A directory whose disk can be made to fail: an ext4 image (made with `mkfs.ext4 -d` from
//! the files) on a loop device, mounted read-only. `fail()` shrinks the loop device to nothing
//! (`losetup -c` after truncating its file), so every read the block layer gets from then on
//! is past the device's end and returns EIO, and evicts the files' cached pages so reads go
//! to the disk. Needs root, `losetup` and `mkfs.ext4`; device-mapper's `error` target would
//! do the same, but this kernel has no device-mapper.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mounted faulty directory; unmounted and detached on drop.
#[derive(Debug)]
pub struct FaultyDir {
    pub mount: PathBuf,
    image: PathBuf,
    loopdev: String,
    files: Vec<PathBuf>,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl FaultyDir {
    /// Builds the image from `files` (name, content) under `scratch` and mounts it at
    /// `scratch/faulty`. Err: why it cannot (the caller skips with it).
    pub fn new(scratch: &Path, files: &[(&str, &[u8])]) -> Result<FaultyDir, String> {
        if !crate::is_root() {
            return Err("needs root (loop devices and mount)".into());
        }
        let src = scratch.join("faulty-src");
        std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
        for (name, content) in files {
            std::fs::write(src.join(name), content).map_err(|e| e.to_string())?;
        }
        let image = scratch.join("faulty.img");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&image)
            .arg("16M"))?;
        let loopdev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        let mount = scratch.join("faulty");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let dir = FaultyDir {
            files: files.iter().map(|(n, _)| mount.join(n)).collect(),
            mount,
            image,
            loopdev,
        };
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "ro,noload", &dir.loopdev])
            .arg(&dir.mount))?;
        Ok(dir)
    }

    /// From now on the disk answers every read with EIO.
    pub fn fail(&self) -> Result<(), String> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .and_then(|f| f.set_len(0))
            .map_err(|e| format!("truncating {}: {e}", self.image.display()))?;
        run(Command::new("losetup").args(["--set-capacity", &self.loopdev]))?;
        // The files' pages leave the page cache (those a process has mapped stay), and the
        // device's buffers (directory blocks, inode tables) go too.
        for f in &self.files {
            if let Ok(file) = std::fs::File::open(f) {
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        run(Command::new("blockdev").args(["--flushbufs", &self.loopdev]))?;
        Ok(())
    }
}

impl Drop for FaultyDir {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
        let _ = run(Command::new("losetup").args(["-d", &self.loopdev]));
    }
}
