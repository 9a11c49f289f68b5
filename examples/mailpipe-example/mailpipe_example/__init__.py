"""An example third-party mailpipe plugin: copy this package to start your own."""
