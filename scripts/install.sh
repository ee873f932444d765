#!/usr/bin/env bash
# Installs llama-orch on this machine (README.md, "Install on your GPU workstation"):
#   1. orchestratord and llorch (release build) into PREFIX/bin (default ~/.local/bin);
#   2. a llama-server into PREFIX/bin: the one given (--llama-server), one already installed
#      or on PATH, else built from the vendored llama.cpp source (`cargo xtask build-engine`),
#      with CUDA when a CUDA toolkit (nvcc) is found, CPU-only otherwise (said loudly);
#   3. `llorch init`: a daemon config for this machine's GPUs and the models in ~/models,
#      unless one exists;
#   4. with --systemd, the user unit contrib/systemd/llama-orch.service, enabled.
# Idempotent: a second run changes nothing and says so.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [options]
  --prefix DIR          install into DIR/bin (default: ~/.local)
  --llama-server PATH   use this llama-server (copied into DIR/bin)
  --build-llama-server  build llama-server from the vendored source even if one is installed
  --cpu-only            build llama-server without CUDA
  --cuda-arch LIST      CUDA architectures to build for, e.g. "86;89"
                        (default: the GPUs nvidia-smi reports, else llama.cpp's default list)
  --jobs N              parallel build jobs (default: all CPUs)
  --bin-dir DIR         take orchestratord and llorch from DIR instead of building them
                        (e.g. target/debug; the tests use it)
  --no-build            take them from the existing release build (target/release)
  --models-dir DIR      models for `llorch init` (default: ~/models)
  --config-dir DIR      config directory for `llorch init` (default: ~/.config/llama-orch)
  --no-init             do not run `llorch init`
  --systemd             install the systemd user unit and enable it
  --no-enable           with --systemd: install the unit, print the commands to enable it
  -h, --help            this text
EOF
}

say() { echo "[install] $*" >&2; }
die() {
  echo "[install] error: $*" >&2
  exit 1
}

prefix="$HOME/.local"
llama_server=""
build_engine=false
cpu_only=false
cuda_arch=""
jobs=""
bin_dir=""
no_build=false
models_dir="$HOME/models"
config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/llama-orch"
do_init=true
systemd=false
enable=true

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift ;;
    --llama-server) llama_server="${2:?--llama-server needs a path}"; shift ;;
    --build-llama-server) build_engine=true ;;
    --cpu-only) cpu_only=true ;;
    --cuda-arch) cuda_arch="${2:?--cuda-arch needs a list such as 86;89}"; shift ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift ;;
    --no-build) no_build=true ;;
    --models-dir) models_dir="${2:?--models-dir needs a directory}"; shift ;;
    --config-dir) config_dir="${2:?--config-dir needs a directory}"; shift ;;
    --no-init) do_init=false ;;
    --systemd) systemd=true ;;
    --no-enable) enable=false ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$prefix/bin"
prefix="$(cd "$prefix" && pwd)"
bin="$prefix/bin"
changes=0
did=()
notes=()

# Copies $1 to $2 (mode $3) unless $2 already has the same bytes; atomic (rename), so a
# running binary is never half-written.
install_file() {
  local src="$1" dest="$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    say "unchanged: $dest"
    return 0
  fi
  local tmp
  tmp="$(dirname "$dest")/.$(basename "$dest").tmp.$$"
  install -m "$mode" "$src" "$tmp"
  mv -f "$tmp" "$dest"
  say "installed: $dest"
  did+=("installed $dest")
  changes=$((changes + 1))
}

# 1. orchestratord and llorch.
if [ -n "$bin_dir" ]; then
  src_dir="$(cd "$bin_dir" && pwd)"
  say "taking the binaries from $src_dir (--bin-dir)"
elif $no_build; then
  src_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
  say "taking the binaries from $src_dir (--no-build)"
else
  command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; install Rust (https://rustup.rs) or pass --bin-dir"
  say "building orchestratord and llorch (release; the first time takes a few minutes)"
  (cd "$repo" && cargo build --release -p orchestratord -p llorch-cli)
  src_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
fi
for b in orchestratord llorch; do
  [ -x "$src_dir/$b" ] || die "$src_dir/$b does not exist; build it (cargo build --release -p orchestratord -p llorch-cli) or fix --bin-dir"
  install_file "$src_dir/$b" "$bin/$b" 0755
done

# 2. llama-server.
is_cuda_build() { ldd "$1" 2>/dev/null | grep -qE 'libcuda|libcudart|libcublas|libggml-cuda'; }
runs() { "$1" --version >/dev/null 2>&1; }
engine="$bin/llama-server"
if [ -n "$llama_server" ]; then
  if [ ! -f "$llama_server" ] || [ ! -x "$llama_server" ]; then
    die "--llama-server $llama_server is not an executable file"
  fi
  install_file "$llama_server" "$engine" 0755
elif ! $build_engine && [ -x "$engine" ] && runs "$engine"; then
  say "unchanged: $engine (already installed; --build-llama-server rebuilds it)"
elif ! $build_engine && found="$(command -v llama-server 2>/dev/null)"; then
  engine="$found"
  say "unchanged: using llama-server on PATH: $engine"
else
  command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; it builds llama-server (or pass --llama-server PATH)"
  xtask_args=(build-engine)
  if $cpu_only; then xtask_args+=(--cuda off); else xtask_args+=(--cuda auto); fi
  [ -n "$cuda_arch" ] && xtask_args+=(--cuda-arch "$cuda_arch")
  [ -n "$jobs" ] && xtask_args+=(--jobs "$jobs")
  say "providing llama-server: cargo xtask ${xtask_args[*]} (a first build takes tens of minutes; cached afterwards)"
  out="$(cd "$repo" && cargo xtask "${xtask_args[@]}")" || die "building llama-server failed (see above)"
  built="$(printf '%s\n' "$out" | sed -n 's/^LLAMA_SERVER=//p')"
  flavor="$(printf '%s\n' "$out" | sed -n 's/^LLAMA_SERVER_FLAVOR=//p')"
  [ -x "$built" ] || die "cargo xtask build-engine printed no usable LLAMA_SERVER ($out)"
  install_file "$built" "$engine" 0755
  if [ "$flavor" = cpu ] && ! $cpu_only; then
    notes+=("!!! llama-server is CPU-ONLY: no CUDA toolkit (nvcc) was found. Install the CUDA toolkit, then: scripts/install.sh --build-llama-server")
  fi
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && ! is_cuda_build "$engine"; then
  notes+=("!!! $engine looks CPU-only (no CUDA library in ldd) but this machine has NVIDIA GPUs; build a CUDA one: scripts/install.sh --build-llama-server")
fi

case ":$PATH:" in
  *":$bin:"*) ;;
  *) notes+=("$bin is not on PATH; add it: echo 'export PATH=\"$bin:\$PATH\"' >> ~/.bashrc") ;;
esac

# 3. The daemon config.
cfg="$config_dir/orchestratord.yaml"
init_failed=false
if ! $do_init; then
  say "skipping llorch init (--no-init)"
elif [ -e "$cfg" ]; then
  say "unchanged: $cfg (exists; \`llorch init --force\` rewrites it)"
else
  say "writing the daemon config: llorch init --models-dir $models_dir"
  if "$bin/llorch" init --models-dir "$models_dir" --config-dir "$config_dir" --llama-server "$engine"; then
    did+=("wrote $cfg (llorch init)")
    changes=$((changes + 1))
  else
    init_failed=true
    notes+=("llorch init failed (above); fix it, then run: $bin/llorch init --models-dir $models_dir --config-dir $config_dir")
  fi
fi

# 4. The systemd user unit.
unit_name=llama-orch.service
unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
enable_cmds="systemctl --user daemon-reload && systemctl --user enable --now $unit_name"
if $systemd; then
  mkdir -p "$unit_dir"
  rendered="$(mktemp)"
  trap 'rm -f "$rendered"' EXIT
  # The template's default paths, replaced by this install's.
  sed -e "s|%h/.local/bin/orchestratord|$bin/orchestratord|" \
    -e "s|%h/.config/llama-orch/orchestratord.yaml|$cfg|" \
    "$repo/contrib/systemd/$unit_name" >"$rendered"
  before=$changes
  install_file "$rendered" "$unit_dir/$unit_name" 0644
  unit_changed=$((changes - before))
  if ! $enable; then
    notes+=("enable the service: $enable_cmds")
  elif command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
    if [ "$unit_changed" -gt 0 ]; then systemctl --user daemon-reload; fi
    if systemctl --user is-enabled --quiet "$unit_name" 2>/dev/null; then
      say "unchanged: $unit_name is enabled"
      if [ "$changes" -gt 0 ]; then
        # The running daemon keeps the old binaries and unit until restarted (it drains first).
        systemctl --user try-restart "$unit_name"
        did+=("restarted $unit_name")
      fi
    else
      systemctl --user enable --now "$unit_name"
      did+=("enabled and started $unit_name")
      changes=$((changes + 1))
    fi
    notes+=("start at boot without logging in: loginctl enable-linger $USER")
  else
    say "no systemd user manager here (a container?); not enabling the unit"
    notes+=("enable the service where systemd runs: $enable_cmds")
  fi
fi

# Summary.
echo >&2
if [ "$changes" -eq 0 ]; then
  say "nothing changed: everything is already installed"
else
  say "done, $changes change(s):"
  for d in "${did[@]+"${did[@]}"}"; do say "  - $d"; done
fi
say "llama-server: $engine"
for n in "${notes[@]+"${notes[@]}"}"; do say "note: $n"; done
echo >&2
say "next:"
if $init_failed || [ ! -e "$cfg" ]; then
  say "  $bin/llorch init --models-dir $models_dir      # a config for this machine's GPUs and models"
fi
say "  $bin/orchestratord --check-config --config $cfg"
if $systemd; then
  say "  journalctl --user -u llama-orch -f              # the daemon's logs"
else
  say "  $bin/orchestratord --config $cfg    # or as a service: scripts/install.sh --systemd"
fi
cli_env=""
if [ "$config_dir" != "${XDG_CONFIG_HOME:-$HOME/.config}/llama-orch" ]; then
  cli_env="LLORCH_CLI_CONFIG=$config_dir/cli.toml "
fi
say "  $cli_env$bin/llorch status                      # then: llorch submit \"Hello\""
