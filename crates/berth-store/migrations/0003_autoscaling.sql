-- Autoscaling (a berth extension): all five set, or none (autoscaling off). Capacities are in
-- units like `capacity`; the API validates the values, the CHECKs keep the row coherent.
ALTER TABLE deployments ADD COLUMN autoscale_min_capacity INTEGER
    CHECK (autoscale_min_capacity >= 0);
ALTER TABLE deployments ADD COLUMN autoscale_max_capacity INTEGER
    CHECK (autoscale_max_capacity >= autoscale_min_capacity);
ALTER TABLE deployments ADD COLUMN autoscale_target_inflight INTEGER
    CHECK (autoscale_target_inflight >= 1);
ALTER TABLE deployments ADD COLUMN autoscale_down_delay_secs INTEGER
    CHECK (autoscale_down_delay_secs >= 0);
ALTER TABLE deployments ADD COLUMN autoscale_zero_after_secs INTEGER
    CHECK (autoscale_zero_after_secs >= 0);
