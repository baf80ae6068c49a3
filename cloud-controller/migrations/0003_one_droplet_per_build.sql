CREATE UNIQUE INDEX droplets_build_guid ON droplets (build_guid);
