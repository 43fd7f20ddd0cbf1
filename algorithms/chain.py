"""``python -m algorithms.chain``: fused stages, one clip's stages after another in
this one process, their intermediates passed in memory (see algorithms.sdk)."""

from algorithms.sdk import run_chain

if __name__ == "__main__":
    run_chain()
