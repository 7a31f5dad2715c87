"""`headsculpt dataset`: multi-view images of heads with their cameras, in the layout EG3D-style 3D-GAN
trainers read (StyleAvatar3D's data generation). `cameras_eg3d` holds the camera convention, `sources`
what the images come from (prompts on a prior, or finished runs), `sampling` the diffusion sampler,
`writer` the folder layout, `build` the loop that ties them together."""
