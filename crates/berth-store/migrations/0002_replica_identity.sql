-- What proves a recorded replica is the process berth started (adoption after a restart):
-- the secret it was given at spawn and its process start time (clock ticks after boot, from
-- /proc/PID/stat). A record is written before the spawn with pid 0 and proc_start 0.
ALTER TABLE replicas ADD COLUMN secret TEXT NOT NULL DEFAULT '';
ALTER TABLE replicas ADD COLUMN proc_start INTEGER NOT NULL DEFAULT 0;
