"""Code that runs in a container's own processes (the intermediate, the user-namespace set-up
process, pid 1 and the main process). It never imports the fork server's code."""
