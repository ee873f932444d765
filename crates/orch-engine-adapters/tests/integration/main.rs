//! The adapters against real engines (llama-server) and protocol fixtures (vLLM, TGI, Triton):
//! one test binary, a module per engine (`cargo test -p orch-engine-adapters --test integration
//! vllm_fixture::`); `common` starts the engines and fixture servers.

mod common;

mod llamacpp_extras;
mod openai_llama_server;
mod tgi_fixture;
mod triton_fixture;
mod vllm_fixture;
