"""One module per detection signal; each follows detect.base.Signal."""
