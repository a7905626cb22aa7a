"""`python -m taskvec ...` (and `torchrun --nproc-per-node N -m taskvec run ...`)."""

from .cli import main

if __name__ == "__main__":
    main()
