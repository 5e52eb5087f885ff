"""What is deployed: the runtime plan and its schema, Genie configs, ONNX Runtime QNN EP run-option
files, --lora_weight_list files and device bundles. Everything here reads a finished build."""
