"""Long workflows on top of the applications: the schedule-search job (`search_job`) and the learned-timesteps
run (`timesteps_run`). They read and write zoos and result folders; nothing below them imports them."""
