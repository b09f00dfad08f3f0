"""The loss studies that `reproduce.py` runs: what they train (`design`), the synthetic teachers (`teachers`), the
resumable paired-seed runs (`runs`), their statistics (`statistics`), tables (`report`) and figures (`figures`), and
the paper's suite on UIT-OpenViIC (`paper`)."""
