pub mod pytorch_grpo;
