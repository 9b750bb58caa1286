import torch

# two cores: one thread per process keeps timings steady and tests fast
torch.set_num_threads(1)
