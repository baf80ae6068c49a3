-- A droplet that is an OCI image (a Dockerfile build or a pushed image): its manifest digest,
-- an image of the image store; NULL for a buildpack droplet.
ALTER TABLE droplets ADD COLUMN image_digest TEXT;
