# Sourced first by the scripts that need root: as root, nothing happens; otherwise the calling script runs
# again under sudo, or stops with one line when there is no sudo (a minimal Debian install has none).
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "scripts/$(basename "$0"): needs root, and sudo is not installed: run it as root" >&2
        exit 2
    fi
    exec sudo -- bash "$(readlink -f "$0")" "$@"
fi
