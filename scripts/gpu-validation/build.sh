#!/usr/bin/env bash
G=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$G/src" && tar xJf "$G/llama.cpp.tar.xz" -C "$G/src"
cd "$G/src/llama.cpp"
t0=$(date +%s)
cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release > "$G/build.log" 2>&1
cmake --build build --target llama-server -j16 >> "$G/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s" > "$G/build.done"
