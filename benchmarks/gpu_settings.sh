# Settings shared by benchmarks/gpu_bundle.sh (which allocates the plans here) and benchmarks/gpu_evidence.sh
# (which trains them on the GPU machine); sourced by both, so the plans carried are the plans trained.
ARMS=${GPU_EVIDENCE_ARMS:-layer,path,uniform,synflow}
BUDGETS=${GPU_EVIDENCE_BUDGETS:-0.3,0.5}
ABLATE=${GPU_EVIDENCE_ABLATE:-path}
SPEEDUP_ARCHS=${GPU_EVIDENCE_SPEEDUP_ARCHS:-mobilenetv2_cifar cifar_resnet56 resnet50}
