#!/usr/bin/env bash
# Make sure Fashion-MNIST is on disk (Debian's dataset-fashion-mnist package), installing it when root.
# BNLIB_DATA (the folder bnlib.data reads datasets from, see README) set: the user brings the files.
set -euo pipefail
target=/usr/share/datasets/fashion-mnist
if [ -f "$target/train-images-idx3-ubyte.gz" ] || [ -n "${BNLIB_DATA:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing Fashion-MNIST (apt-get install dataset-fashion-mnist)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "Fashion-MNIST is missing from $target. Install it with" >&2
  echo "  sudo apt-get install dataset-fashion-mnist" >&2
  echo "or put the IDX files (train-images-idx3-ubyte.gz, ...) in a folder and pass it as data_root." >&2
  exit 1
fi
