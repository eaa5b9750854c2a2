-- Every change to a read model (a projector batch or a rebuild swapping tables in) moves its revision up by one, so
-- each Gatehouse process can tell whether what it remembers of a read model is still current without reading it.
ALTER TABLE projection_checkpoints ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
