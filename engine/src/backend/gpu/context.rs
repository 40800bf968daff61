//! The wgpu device: adapter and device request with the limits a model needs, optional features
//! (`SHADER_F16`, `SUBGROUP`) taken when present and never required, device-lost and
//! uncaptured-error capture mapped to typed [`Error`]s, and buffer read-back that blocks
//! natively and awaits `map_async` through a channel on the web.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};

/// What to ask of the device.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuOptions {
    /// Use `SHADER_F16` when the adapter has it.
    pub use_f16: bool,
    /// Use subgroup reductions (`SUBGROUP`) when the adapter has them.
    pub use_subgroups: bool,
    /// Cap on the storage-binding size the engine plans with (below the device's own limit):
    /// tests use a small value to exercise the splitting of large tensors.
    pub max_binding_cap: Option<u64>,
    /// Prefer a discrete GPU.
    pub high_performance: bool,
    /// Invocations sharing one weight row in the matmul kernels (a power of two ≤ 64); `None`
    /// picks 1 on CPU-emulated adapters (no barriers) and 16 on GPUs.
    pub matmul_threads_per_row: Option<u32>,
    /// Cache positions per workgroup of decode attention (1 ..= 256); `None` picks
    /// [`DECODE_CHUNK_CPU`] on CPU-emulated adapters and [`DECODE_CHUNK_GPU`] on GPUs.
    pub attn_decode_chunk: Option<u32>,
}

/// Decode-attention chunk on GPUs: short chunks give n_head × (positions / 64) workgroups, enough
/// to spread even a short cache over a GPU's cores.
pub const DECODE_CHUNK_GPU: u32 = 64;
/// Decode-attention chunk on CPU-emulated adapters (lavapipe, SwiftShader): a few large chunks,
/// since every extra workgroup and the merge cost more than they spread.
pub const DECODE_CHUNK_CPU: u32 = 256;

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            use_f16: true,
            use_subgroups: true,
            max_binding_cap: None,
            high_performance: true,
            matmul_threads_per_row: None,
            attn_decode_chunk: None,
        }
    }
}

impl GpuOptions {
    /// Only what every WebGPU device has: no optional features.
    pub fn baseline() -> Self {
        Self {
            use_f16: false,
            use_subgroups: false,
            ..Self::default()
        }
    }
}

/// What the adapter is and what it allows.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Graphics API, e.g. "vulkan", "webgpu".
    pub backend: String,
    /// "discrete", "integrated", "cpu", ...
    pub device_type: String,
    /// Driver description.
    pub driver: String,
    /// Largest storage-buffer binding in bytes (after any [`GpuOptions::max_binding_cap`]).
    pub max_storage_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Workgroup memory in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers: u32,
    /// Whether `shader-f16` is enabled on the device (the KV cache then holds f16).
    pub f16: bool,
    /// Whether subgroup operations are enabled on the device (and used by the kernels).
    pub subgroups: bool,
    /// Subgroup size range reported by the adapter (0 when unknown).
    pub subgroup_size: (u32, u32),
    /// Invocations per weight row in the matmul kernels (see [`GpuOptions`]).
    pub matmul_threads_per_row: u32,
    /// Cache positions per workgroup of decode attention (see [`GpuOptions`]).
    pub attn_decode_chunk: u32,
}

#[derive(Default)]
struct DeviceState {
    lost: Option<String>,
    error: Option<Error>,
}

/// Device, queue and what was negotiated with the adapter.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    state: Arc<Mutex<DeviceState>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("info", &self.info)
            .finish()
    }
}

/// Storage binding size the engine asks for when the adapter allows it (1 GiB: more than any
/// single tensor of the small models this engine targets).
pub const WANTED_STORAGE_BINDING: u64 = 1 << 30;

fn map_wgpu_error(e: &wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::GpuOutOfMemory {
            what: "a GPU allocation".into(),
            bytes: 0,
        },
        wgpu::Error::Validation { description, .. } => Error::Gpu {
            op: "validation",
            what: description.clone(),
        },
        wgpu::Error::Internal { description, .. } => Error::Gpu {
            op: "internal",
            what: description.clone(),
        },
    }
}

impl GpuContext {
    /// Request an adapter and a device. Errors: [`Error::GpuUnavailable`] when there is no
    /// adapter or the device request fails.
    pub async fn new_async(opts: &GpuOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: if opts.high_performance {
                    wgpu::PowerPreference::HighPerformance
                } else {
                    wgpu::PowerPreference::LowPower
                },
                ..Default::default()
            })
            .await
            .map_err(|e| {
                // wgpu's web message lists every native backend it was built without.
                if cfg!(target_arch = "wasm32") {
                    Error::GpuUnavailable("the browser offers no WebGPU adapter".into())
                } else {
                    Error::GpuUnavailable(format!("no GPU adapter: {e}"))
                }
            })?;
        let a_limits = adapter.limits();
        let a_features = adapter.features();
        let a_info = adapter.get_info();

        let mut features = wgpu::Features::empty();
        if opts.use_f16 && a_features.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if opts.use_subgroups && a_features.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        // Ask for as much storage-binding and buffer size as the adapter gives, up to what we
        // may need; everything else stays at the WebGPU defaults (clamped to the adapter).
        let mut limits = wgpu::Limits::defaults();
        limits.max_storage_buffer_binding_size = a_limits
            .max_storage_buffer_binding_size
            .min(WANTED_STORAGE_BINDING);
        limits.max_buffer_size = a_limits.max_buffer_size.min(WANTED_STORAGE_BINDING);
        limits.max_storage_buffers_per_shader_stage =
            a_limits.max_storage_buffers_per_shader_stage.min(8);
        limits.max_compute_workgroup_storage_size =
            a_limits.max_compute_workgroup_storage_size.min(16384);
        limits.max_compute_invocations_per_workgroup =
            a_limits.max_compute_invocations_per_workgroup.min(256);
        limits.max_compute_workgroup_size_x = a_limits.max_compute_workgroup_size_x.min(256);
        limits.max_compute_workgroups_per_dimension =
            a_limits.max_compute_workgroups_per_dimension.min(65535);
        for (name, have, need) in [
            (
                "maxStorageBuffersPerShaderStage",
                limits.max_storage_buffers_per_shader_stage,
                crate::backend::gpu::MIN_STORAGE_BUFFERS,
            ),
            (
                "maxComputeInvocationsPerWorkgroup",
                limits.max_compute_invocations_per_workgroup,
                256,
            ),
        ] {
            if have < need {
                return Err(Error::GpuLimits {
                    limit: name,
                    needed: need as u64,
                    available: have as u64,
                });
            }
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("slm-engine"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::GpuUnavailable(format!("device request failed: {e}")))?;

        let state = Arc::new(Mutex::new(DeviceState::default()));
        {
            let st = state.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut s) = st.lock() {
                    if s.error.is_none() {
                        s.error = Some(map_wgpu_error(&e));
                    }
                }
            }));
            let st = state.clone();
            device.set_device_lost_callback(move |reason, msg| {
                if let Ok(mut s) = st.lock() {
                    s.lost = Some(format!("{reason:?}: {msg}"));
                }
            });
        }
        let mut max_binding = limits.max_storage_buffer_binding_size;
        if let Some(cap) = opts.max_binding_cap {
            max_binding = max_binding.min(cap.max(256));
        }
        let tpr = match opts.matmul_threads_per_row {
            Some(t) if t.is_power_of_two() && t <= 64 => t,
            Some(t) => {
                return Err(Error::InvalidParam {
                    name: "matmul_threads_per_row",
                    what: format!("{t} is not a power of two up to 64"),
                })
            }
            None if a_info.device_type == wgpu::DeviceType::Cpu => 1,
            None => 16,
        };
        let chunk = match opts.attn_decode_chunk {
            Some(c) if (1..=super::params::ATTN_MAX_CHUNK).contains(&c) => c,
            Some(c) => {
                return Err(Error::InvalidParam {
                    name: "attn_decode_chunk",
                    what: format!("{c} is not in 1..=256"),
                })
            }
            None if a_info.device_type == wgpu::DeviceType::Cpu => DECODE_CHUNK_CPU,
            None => DECODE_CHUNK_GPU,
        };
        let info = GpuInfo {
            name: a_info.name.clone(),
            backend: format!("{:?}", a_info.backend).to_lowercase(),
            device_type: format!("{:?}", a_info.device_type).to_lowercase(),
            driver: format!("{} {}", a_info.driver, a_info.driver_info)
                .trim()
                .to_string(),
            max_storage_binding: max_binding,
            max_buffer: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (a_info.subgroup_min_size, a_info.subgroup_max_size),
            matmul_threads_per_row: tpr,
            attn_decode_chunk: chunk,
        };
        Ok(Self {
            device,
            queue,
            info,
            state,
        })
    }

    /// Blocking [`GpuContext::new_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// The first device loss or uncaptured error since the last call, as a typed error.
    pub fn check(&self) -> Result<()> {
        let mut s = self.state.lock().map_err(|_| Error::Gpu {
            op: "check",
            what: "device state lock poisoned".into(),
        })?;
        if let Some(msg) = &s.lost {
            return Err(Error::GpuDeviceLost(msg.clone()));
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Largest storage binding the engine plans with.
    pub fn max_binding(&self) -> u64 {
        self.info.max_storage_binding
    }

    /// A buffer of `size` bytes (rounded up to 4). Errors: [`Error::GpuLimits`] past the
    /// buffer-size limit, [`Error::GpuOutOfMemory`] when the allocation fails.
    pub fn buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        if size > self.info.max_buffer {
            return Err(Error::GpuLimits {
                limit: "maxBufferSize",
                needed: size,
                available: self.info.max_buffer,
            });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.check_alloc(label, size)?;
        Ok(buf)
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes), filled
    /// through its mapping at creation: one copy, no staging.
    pub fn buffer_init(
        &self,
        label: &str,
        data: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let size = (data.len() as u64).max(4).next_multiple_of(4);
        if size > self.info.max_buffer {
            return Err(Error::GpuLimits {
                limit: "maxBufferSize",
                needed: size,
                available: self.info.max_buffer,
            });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: true,
        });
        self.check_alloc(label, size)?;
        {
            let mut view = buf.get_mapped_range_mut(..).map_err(|e| Error::Gpu {
                op: "upload",
                what: format!("{label}: {e}"),
            })?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        buf.unmap();
        Ok(buf)
    }

    fn check_alloc(&self, label: &str, bytes: u64) -> Result<()> {
        match self.check() {
            Err(Error::GpuOutOfMemory { .. }) => Err(Error::GpuOutOfMemory {
                what: label.to_string(),
                bytes,
            }),
            other => other,
        }
    }

    /// Submit `commands` and wait until `staging` (a `MAP_READ` buffer) can be read, then copy
    /// its first `out.len()` bytes into `out`. Natively this blocks on the device; on the web
    /// it awaits the browser's `mapAsync`.
    pub async fn submit_and_read(
        &self,
        commands: wgpu::CommandBuffer,
        staging: &wgpu::Buffer,
        out: &mut [u8],
    ) -> Result<()> {
        self.queue.submit(Some(commands));
        self.check()?;
        let bytes = (out.len() as u64).next_multiple_of(4).max(4);
        let slice = staging.slice(0..bytes);
        let (tx, rx) = oneshot::<std::result::Result<(), wgpu::BufferAsyncError>>();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                op: "poll",
                what: e.to_string(),
            })?;
        let mapped = rx.await;
        self.check()?;
        mapped.map_err(|e| Error::Gpu {
            op: "map_async",
            what: e.to_string(),
        })?;
        {
            let view = slice.get_mapped_range().map_err(|e| Error::Gpu {
                op: "read back",
                what: e.to_string(),
            })?;
            out.copy_from_slice(&view[..out.len()]);
        }
        staging.unmap();
        Ok(())
    }

    /// Blocking [`GpuContext::submit_and_read`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_and_read_blocking(
        &self,
        commands: wgpu::CommandBuffer,
        staging: &wgpu::Buffer,
        out: &mut [u8],
    ) -> Result<()> {
        pollster::block_on(self.submit_and_read(commands, staging, out))
    }

    /// Workgroup grid (x, y) covering `n` workgroups within maxComputeWorkgroupsPerDimension;
    /// kernels linearize it as `y * num_workgroups.x + x` and skip ids past `n`.
    pub fn grid(n: u32) -> (u32, u32) {
        const MAX: u32 = 65535;
        if n <= MAX {
            (n.max(1), 1)
        } else {
            let y = n.div_ceil(MAX);
            (n.div_ceil(y), y)
        }
    }
}

/// A one-value channel whose receiver is a future: how `map_async` completions reach async code
/// without blocking (the web cannot block).
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    (Sender(s.clone()), Receiver(s))
}

impl<T> Sender<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.0.lock() {
            Ok(mut s) => match s.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            Err(_) => Poll::Pending,
        }
    }
}
