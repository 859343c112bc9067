// Every wake mechanism, registered once. Import mechanisms from here so that `wake=` knows them all.
export * from './mechanism.js';
